"""The search page `mmrank serve` shows at ``/``: plain HTML, CSS and JavaScript, no build step."""
