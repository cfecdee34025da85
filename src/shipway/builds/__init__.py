"""builds feature: publish jobs turning sources into images."""
