from clm import main

main()
