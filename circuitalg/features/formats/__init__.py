"""Dictionary file formats, one module each (see :mod:`circuitalg.features.io`)."""
