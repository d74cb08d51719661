"""The market calendar: NYSE rules, Polygon's special days, the cached list and its refresh."""
