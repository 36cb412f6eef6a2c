"""The money rules: what each command does to the books, who may do it, and the API's shape of a
record. Pure code, no I/O: persistence reads the rows and stores what these modules decide."""
