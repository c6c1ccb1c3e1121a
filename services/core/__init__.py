"""The bottom layer of the control plane: errors, endpoints, statuses, numbers, labels.

Everything else in services/ may import from here; nothing here imports the rest of services/.
"""
