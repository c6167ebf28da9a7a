"""COCO in: download the annotation files, read them into the store."""
