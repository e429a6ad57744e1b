"""Run reports without Beam: contact sheets of posters beside their neighbours and the one-file
HTML report, read from what the stages wrote."""
