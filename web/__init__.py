"""web/: the TinyBeauty web page (static files) and its Python helpers, serve.py and page_driver.py."""
