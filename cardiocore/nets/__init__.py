"""Neural-network building blocks shared by the CardioShape methods."""
