"""The web page for clinicians, operators and researchers (`rhd web`; `rhd up` runs it beside the line)."""
