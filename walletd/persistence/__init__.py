"""Storage: the pool, the SQL, and the translation of driver errors into domain errors.

asyncpg exceptions never leave this package.
"""
