"""kopf handlers: gather state, call modelloop.decide, apply the result (one status write per pass)."""
