"""Pipeline stages. Each module holds one stage's logic as typed functions; the Prefect tasks
wrap them and the flows in `flows/` only wire them together."""
