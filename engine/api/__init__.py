"""flashsale api."""
