"""What a person sees: plots (every generic figure), the report folder and the one self-contained
report.html. Imports every layer below it; nothing imports it but the public API."""
