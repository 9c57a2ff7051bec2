"""What a session reports: run records and the terminal table, the results JSON and its schema,
the HTML report, and `sdopt compare`."""
