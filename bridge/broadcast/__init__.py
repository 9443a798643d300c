"""Broadcasts: who an opportunity reaches (`targets`), how (`broadcaster`), and the request API
coordinators call (`api`)."""
