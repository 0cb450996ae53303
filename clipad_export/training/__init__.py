"""`clipad train`: SDP+ heads trained from cached backbone features with the official losses."""
