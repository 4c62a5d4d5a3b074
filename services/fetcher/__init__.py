"""The fetcher: pages MATI ``/v4/indicator`` over a ``last_updated`` window and publishes each
raw indicator to the ``indicators`` topic, moving its checkpoint only after the bus confirmed a
page (DESIGN §2). One is active at a time, by a Redis lease.

``sync`` holds one sync (:class:`~services.fetcher.sync.Fetcher`), ``config`` what it asks
MATI for (no filter is pushed down: a record that stops passing must still be fetched, so the
filter can revoke it); ``main`` wires it to the runtime and runs it on schedule or once.
"""
