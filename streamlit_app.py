"""Seekframe web app: `streamlit run streamlit_app.py`. Pages live in pages/ and stay thin; logic is in kb/."""
import streamlit as st

st.set_page_config(page_title="Seekframe", page_icon="🔎", layout="wide")
navigation = st.navigation([
    st.Page("pages/ask.py", title="Ask", icon=":material/chat:", default=True),
    st.Page("pages/library.py", title="Library", icon=":material/library_books:"),
    st.Page("pages/add.py", title="Add content", icon=":material/add_circle:"),
    st.Page("pages/system.py", title="System", icon=":material/monitor_heart:"),
])
navigation.run()
