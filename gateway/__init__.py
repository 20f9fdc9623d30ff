"""smsgw's HTTP facade."""
