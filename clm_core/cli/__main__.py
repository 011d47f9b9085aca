from clm_core.cli import main

main()
