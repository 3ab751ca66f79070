"""Reporting: loss tables, replay-benchmark reports and the plots a reviewer looks at."""
