"""Where TFTP bytes come from: local files, an HTTP mirror, plugins."""
