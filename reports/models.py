"""Reports are domain objects (ris.models.Report); this app owns the results going out."""
