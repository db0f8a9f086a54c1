"""flashsale loadgen."""
