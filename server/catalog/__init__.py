"""The card catalog: sources (plugins per game), import into the database, images."""
