"""Self-generated demo data: lets every stage run end to end with no downloads."""
