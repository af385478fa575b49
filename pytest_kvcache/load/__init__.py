"""Load: QoS classes, the admission queue and open-loop arrivals (design.md section 3a).

Pure, clock-free building blocks: callers pass times in; nothing here sleeps or reads a clock.
"""
