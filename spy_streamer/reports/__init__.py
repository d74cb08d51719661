"""What the commands print: `status`, `report`, `verify` and the report's progress bar."""
