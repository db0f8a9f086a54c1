"""flashsale ops."""
