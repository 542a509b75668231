"""HTTP: blueprints, schemas, the error mapping and the caller identity. Flask lives only here."""
