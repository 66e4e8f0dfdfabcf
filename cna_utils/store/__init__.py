"""What runs keep: the artefact cache, the chapters' results files, the run profiles."""
