"""One module per layout family; `tensor_details.layout` is the public face."""
