"""The SIEM stream: every audit event, in chain order, to the hospital's SIEM over syslog.

* :mod:`broker.siem.mapping` — pure: an audit row to an OCSF event (or a CEF line), and the
  table of OCSF category/class/activity per event kind.
* :mod:`broker.siem.syslog` — RFC 5424 messages, RFC 6587 octet-counted framing, and the TCP/TLS
  (RFC 5425) connection.
* :mod:`broker.siem.forwarder` — the ``broker serve`` task that sends from a persisted cursor.
"""
