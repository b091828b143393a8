"""Rule plugins that turn findings into actions (see the rules issue)."""
