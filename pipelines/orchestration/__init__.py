"""End-to-end steps a job or a notebook calls: conf -> session -> lakehouse read -> sweep -> tracking + writes."""
