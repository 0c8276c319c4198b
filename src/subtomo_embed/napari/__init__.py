"""The napari plugin (npe2; ``pip install "subtomo-embed[napari]"``): a reader that opens a
prediction folder, a ``<stem>_embeds.h5`` or a config YAML (tomogram, instance mask coloured by
cluster, instance centres with a features table), and a widget that saves a cluster or a
selection of instances as a STAR file. The manifest is ``napari.yaml`` beside this file."""
