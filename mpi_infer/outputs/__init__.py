"""What a run leaves and shows: summary.json and per_image.csv (results.py), the ledgers (ledger.py), the output
folder's rules (folder.py), the console (console.py), report.html (report.py, figures.py)."""
