"""Seekframe web app: `streamlit run streamlit_app.py`. Pages live in pages/ and stay thin; logic is in kb/."""
import streamlit as st

st.set_page_config(page_title="Seekframe", page_icon="🔎", layout="wide")
navigation = st.navigation([
    st.Page("pages/ask.py", title="Ask", icon="💬", default=True),
    st.Page("pages/library.py", title="Library", icon="📚"),
    st.Page("pages/add.py", title="Add content", icon="➕"),
    st.Page("pages/system.py", title="System", icon="⚙️"),
])
navigation.run()
