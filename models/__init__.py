"""Networks and the features they consume (inference only; never imports ``training``)."""
