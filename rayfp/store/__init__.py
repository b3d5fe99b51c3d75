"""Where fingerprints, spaces and the knowledge tables live: the Delta Lake store (local or s3://),
its table schemas, the change feed, migrations, saving a task and scrubbing old stores."""
