"""Reports for managers and commissioners: the evaluation tables, computed once by the projection
into a read model, laid out as JSON, CSV or a printable page, with disclosure control."""
