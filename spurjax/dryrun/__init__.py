"""`spurjax dryrun`: a preset end to end with random SD-2-shaped models and a tiny Waterbirds-format
folder, measuring each stage (`run`), the models (`models`), the data (`data`), the meters (`measure`)
and the units of work and projection (`counts`)."""
