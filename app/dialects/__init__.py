"""Wire formats ("dialects"), one module each: how a request's body becomes a stream's events
and how its answer is put. See :mod:`app.dialects.base` for what every dialect is.

- :mod:`app.dialects.native`: the gateway's own JSON and NDJSON routes;
- :mod:`app.dialects.otlp`: OTLP/HTTP logs and metrics (protobuf or JSON);
- :mod:`app.dialects.httphandler`: Python's ``logging.handlers.HTTPHandler`` form;
- :mod:`app.dialects.remote_write`: Prometheus remote_write 1.0;
- :mod:`app.dialects.collectd`: collectd's write_http JSON;
- :mod:`app.dialects.hec`: Splunk's HTTP Event Collector (events, raw, acks, health);
- :mod:`app.dialects.loki`: Loki's push API (JSON, or snappy-compressed protobuf);
- :mod:`app.dialects.es_bulk`: Elasticsearch's ``_bulk`` API, and :mod:`app.dialects.es_handshake`
  for what its clients ask first (the version document, health, templates).
"""
