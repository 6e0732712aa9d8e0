"""Child processes and side environments: how vitgender runs converters and workers outside its own process."""
