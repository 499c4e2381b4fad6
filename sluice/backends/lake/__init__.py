"""Lake tables (Iceberg): `base.Lake`, embedded on SQLite (`local`), on AWS in Glue (`glue`)."""
