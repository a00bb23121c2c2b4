"""What people read: tables of runs, pictures of a run or a sweep, and means over repeated seeds. Reads values
handed to it; opens no store."""
