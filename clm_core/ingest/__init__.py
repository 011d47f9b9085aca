"""Getting store data in: CSV imports, the CDNOW data set and synthetic BG/NBD data."""
