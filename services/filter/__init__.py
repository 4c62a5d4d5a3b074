"""The filter service: applies a destination's filters and seen cache to the raw feed.

It reads the destination's subscription of topic ``indicators``, drops what the filters or the
seen cache reject (counted by reason), claims and forwards the rest to ``upload.<destination>``
and only then completes the raw messages (DESIGN.md §2, §4). The work is in ``worker``; ``main``
wires it to settings and connections.
"""
