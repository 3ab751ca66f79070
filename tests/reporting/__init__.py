"""Loss tables and the replay benchmark's CLI and reports."""
