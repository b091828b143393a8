"""HTML reports and email (see the reports issue)."""
