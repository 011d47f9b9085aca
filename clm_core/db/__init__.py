"""Database access: the schema, engines, migrations and bulk loading."""
